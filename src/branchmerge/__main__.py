from branchmerge.cli.main import app

app()
