"""The bundled demo model: its folder (`model/`), its corpus split (`corpus`), its training recipe."""
