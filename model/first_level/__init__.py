"""How the first code is chosen: the items' k-NN graph, graph-refined targets, co-liked edges, the adaptive
choice between them, and the anchors' vote that carries the partition over to new items."""
