import sys

from tutorlm.cli.main import main

sys.exit(main())
