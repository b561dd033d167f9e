import sys

from medsynth.zoo import _main

sys.exit(_main())
