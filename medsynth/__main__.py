"""``python -m medsynth`` (also what ``torchrun -m medsynth`` runs)."""

from medsynth.cli import main

raise SystemExit(main())
