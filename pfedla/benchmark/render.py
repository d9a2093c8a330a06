"""The benchmark's pages (written next)."""


def render(spec, places) -> None:
    raise NotImplementedError("render: not written yet")
