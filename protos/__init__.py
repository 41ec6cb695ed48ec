"""Protocol messages: KServe v2 / Triton ``inference`` package, generated at build time from ``*.proto``."""
