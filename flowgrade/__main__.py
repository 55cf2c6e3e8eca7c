"""`python -m flowgrade ...`: the grading driver's command line (see flowgrade.driver)."""
import sys

from .driver import main

sys.exit(main())
