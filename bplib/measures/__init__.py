"""The pure math of each claim: never imports training, results, profiles or claims."""
