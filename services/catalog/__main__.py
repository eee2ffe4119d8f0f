from cartwheel.service import main

main("catalog")
