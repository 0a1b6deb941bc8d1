"""Scores of suspected label errors and of the dataset's health: one contract, a registry of checks,
and what they share.

=========================  ===========================================================================
``contract``               what every check returns: a score per sample (higher = worse), a suggestion
``registry``               the registered checks and ``compute_scores``, which runs them into one table
``neighbours``             the cosine index, kNN graphs (embeddings, visual words) and label votes
``probe``                  the cross-validated linear probe; its checks: loss, confident learning
``confident_learning``     Northcutt et al.'s per-class thresholds and label-issue flags (no cleanlab)
``combine``                the combined score (rank average), the default review queue
``confusion``              given x predicted counts, and the samples in one cell
``health_checks``          the health checks as the registry runs them (no labels needed)
``duplicates``             exact and near copies, groups, copies under two labels, leaks between splits
``outliers``               samples far from their neighbours, or from their own class
``quality``                image quality from per-image statistics: dark, blurry, tiny, grayscale...
``health``                 the health summary: per check, samples flagged and at which threshold
``predictions``            the user's own predictions and embeddings, read, checked and aligned
=========================  ===========================================================================
"""
