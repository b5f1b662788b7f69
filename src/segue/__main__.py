from segue._cli import main

main()
