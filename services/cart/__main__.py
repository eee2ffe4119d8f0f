from cartwheel.service import main

main("cart")
