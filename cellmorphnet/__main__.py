from cellmorphnet.cli.app import main

main()
