"""deftmed.physics: CT ray transforms and noise (``raytransform``, ``noise``, ``geometry``) and
the image-space operators of the natural-image tasks (``imaging``)."""


def is_ct(operator) -> bool:
    """True for a CT ray transform (it has a scanner geometry), False for image operators."""
    return getattr(operator, "geometry", None) is not None
