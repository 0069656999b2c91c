"""The hwsearch service and CLI. Importing it pulls in neither torch nor ray."""
