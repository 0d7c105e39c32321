import sys

from imgzoo.cli import main

sys.exit(main())
