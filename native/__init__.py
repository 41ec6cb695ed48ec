"""Compiled core: codecs and (later) feature transforms, shared by the server and offline tools."""
