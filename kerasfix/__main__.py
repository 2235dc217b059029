import sys

from kerasfix._cli import main

sys.exit(main())
