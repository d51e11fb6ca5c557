"""The training application built on the library: the digits job (`train`), its building blocks
(`trainer`, `models`, `progress`), the single-process comparison (`equivalence`), the layer-level
check (`check`) and the README's demo (`demo`).

`python -m syncnorm.train`, `python -m syncnorm.check` and `python -m syncnorm.demo` (and the
`syncnorm-train` command) run the modules of this package.
"""
