from dossr_cli.cli.app import main

main()
