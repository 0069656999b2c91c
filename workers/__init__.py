"""hwsearch package."""
