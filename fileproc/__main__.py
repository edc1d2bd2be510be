from fileproc.cli import main

main()
