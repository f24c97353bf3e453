"""gitopsd's Slurm backend plugin: trainings as Slurm batch jobs, through the CLI or slurmrestd (see backend.py)."""
