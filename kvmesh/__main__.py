from kvmesh.cli.app import main

main()
