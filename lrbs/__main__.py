from lrbs.cli import main

main()
