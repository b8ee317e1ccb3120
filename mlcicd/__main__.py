import sys

from mlcicd.cli import main

sys.exit(main())
