"""What a model is: its hyperparameters (`config`) and its architecture's structure (`layout`)."""
