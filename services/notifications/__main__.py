from cartwheel.service import main

main("notifications")
