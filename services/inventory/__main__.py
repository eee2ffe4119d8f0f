from cartwheel.service import main

main("inventory")
