"""Lever 4: OpenAI's Files and Batches API, run on idle capacity at a discount.

- `models.py`: the input-line and request shapes (pydantic), OpenAI's response shapes;
- `store.py`: files, batches and lines in the durable store (`serving.store`);
- `service.py`: the API's operations, called by the gateway's routes;
- `admission.py`: how many batch lines may run, given the interactive load;
- `runner.py`: claims batches, runs their lines through the request pipeline in-process,
  commits each line's result exactly once, and writes the output and error files.
"""
