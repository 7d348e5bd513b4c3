from services.gateway.procs import main

main()
