import sys

from dinolab.cli import main

sys.exit(main())
