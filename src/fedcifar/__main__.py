import sys

from fedcifar.cli import main

sys.exit(main())
