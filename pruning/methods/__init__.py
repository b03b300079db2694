"""The pruning methods of methods.md, one module per family; importing registers them.

Imported in methods.md's order, which is the order ``list_methods()`` reports (``dart`` also
registers its in-LLM form, ``dart-llm``; ``fastv`` is in-LLM too).
"""

# isort: skip_file
from . import attention  # noqa: F401
from . import diversity  # noqa: F401
from . import adaptive  # noqa: F401
from . import vispruner  # noqa: F401
from . import visionzip  # noqa: F401
from . import hybrid  # noqa: F401
from . import baselines  # noqa: F401
from . import downsample  # noqa: F401
from . import prumerge  # noqa: F401
from . import dart  # noqa: F401
from . import cdpruner  # noqa: F401
from . import fastv  # noqa: F401
