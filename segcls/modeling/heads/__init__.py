from .fcn import FCNHead
