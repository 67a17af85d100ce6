"""What happens to pixels once fetched, whatever the source: masks, scaling, image
collections (stack, mosaic, composite, flatten) and resampling names. Pure."""
