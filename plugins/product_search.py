"""Generic product search (query vs product title), e.g. ``../shared/data/homedepot``."""

from __future__ import annotations

from reasondistill import Domain, hookimpl


class ProductSearch(Domain):
    """English e-commerce search: a shopper's query against a product title."""

    name = "product_search"
    description = "E-commerce product search: query vs product title (Home Depot style)."
    task = "Judge how relevant a product is to a shopper's search query."
    item_noun = "product"
    label_descriptions = (
        "the product is not what the shopper looks for",
        "the product matches part of the query (type or attribute), not all of it",
        "the product is what the shopper looks for",
    )


@hookimpl
def register_domains(register):
    register(ProductSearch())
