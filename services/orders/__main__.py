from cartwheel.service import main

main("orders")
