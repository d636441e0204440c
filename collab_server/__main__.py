from collab_server.runtime.cli import main

main()
