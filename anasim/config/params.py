"""Former home of the parameter machinery, now :mod:`anasim.params` (a leaf module).

Kept so that ``from anasim.config.params import Section, param, Interval`` keeps
working; new code imports :mod:`anasim.params` (or the same names from
:mod:`anasim.config`).
"""

from ..params import (  # noqa: F401
    Interval,
    ParamRecord,
    Section,
    check_value,
    describe_valid,
    documented,
    field_default,
    field_records,
    format_default,
    import_class,
    param,
    type_name,
)
