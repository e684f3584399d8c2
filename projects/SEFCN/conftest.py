import os
import sys

# The fork is a plain folder next to segcls: make `import se_fcn` work for its tests.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
