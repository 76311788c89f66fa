"""``python -m prototxt2py`` (what ``torchrun -m prototxt2py train SOLVER`` runs)."""

from .cli import main

if __name__ == "__main__":
    main(prog_name="prototxt2py")
