from cdc.cli.main import main

main()
