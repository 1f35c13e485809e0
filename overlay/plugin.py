"""SGLang general-plugin entry point (placeholder until the overlay lands)."""


def register() -> None:
    return None
