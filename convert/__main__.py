from .convert import main

main(prog_name="python -m convert")
