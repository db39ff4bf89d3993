from services.metrics.server import main

main()
