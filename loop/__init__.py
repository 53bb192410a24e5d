"""Human-in-the-loop state: project folder, label store, proposals, ranking, retraining. GUI-free."""
