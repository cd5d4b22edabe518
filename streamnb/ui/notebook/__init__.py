"""The notebook layer: magics, live tables and live charts. It only observes queries."""
