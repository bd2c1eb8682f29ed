"""Everything that supervises agents: launchers, hooks, file guard, CLI, reports."""
