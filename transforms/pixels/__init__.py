"""What happens to pixels once fetched, whatever the source: masks, scaling, image
collections (stack, mosaic, composite, flatten), resampling names and mergeable band
statistics. Pure."""
