from cartwheel.service import main

main("payments")
